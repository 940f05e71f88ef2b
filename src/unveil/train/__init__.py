"""unveil.train"""
