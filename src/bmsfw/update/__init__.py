"""bmsfw.update"""
