"""The MQTT broker: a managed Mosquitto (config, accounts and rights through the dynamic-security
plugin, process supervision) and the start-up probe of an external broker's rights.
"""
