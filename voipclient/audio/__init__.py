"""voipclient.audio"""
