"""unveil.nn"""
