"""bmsfw.protocol"""
