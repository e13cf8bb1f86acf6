"""The Redis adapter on real servers, one test module per module of adapters/redis/."""
