"""voipclient.crypto"""
