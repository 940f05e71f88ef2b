"""unveil.metrics"""
