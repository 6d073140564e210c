"""voipclient.net"""
