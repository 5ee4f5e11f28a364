"""bmsfw.package"""
