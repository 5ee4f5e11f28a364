"""bmsfw.device"""
