"""unveil.generative"""
