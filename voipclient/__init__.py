"""voipclient: multi-channel push-to-talk voice with end-to-end encryption over a blind relay."""

__version__ = "0.1.0"
