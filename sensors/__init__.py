"""Domain core: sensor registry, readings, payload contract, Thai AQI, simulator.

Imports nothing else of the project; everything else imports it.
"""
