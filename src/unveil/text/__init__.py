"""unveil.text"""
