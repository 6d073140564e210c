"""voipclient.ptt"""
