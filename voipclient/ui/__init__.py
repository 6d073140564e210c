"""voipclient.ui"""
