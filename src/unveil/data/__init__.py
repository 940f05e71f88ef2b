"""unveil.data"""
