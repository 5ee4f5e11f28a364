"""bmsfw.link"""
