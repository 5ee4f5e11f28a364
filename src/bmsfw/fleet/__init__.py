"""bmsfw.fleet"""
