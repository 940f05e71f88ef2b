"""unveil.infer"""
