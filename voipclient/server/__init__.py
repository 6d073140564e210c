"""voipclient.server"""
