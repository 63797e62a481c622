"""Testing support shared by the tests and the benchmarks: the fake broker servers, throwaway
PostgreSQL and Mosquitto servers, the reference candle builder, running main.py as a process."""
