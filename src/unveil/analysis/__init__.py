"""unveil.analysis"""
