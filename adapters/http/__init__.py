"""Outbound HTTP: the process's own HTTP/1.1 client (`http1`) and what the environment says about
proxies and trusted CAs (`environment`). Infrastructure for the provider adapters, the stores and the
application's upstream client (handler/upstream.py), importing nothing from the application.
"""
