"""The fleet control loop: MQTT inbox (ack after commit), hub workers, reconciling devices'
desired states, selection, cohorts, and the artifact URLs they carry.
"""
