/// The multi-version keyspace, watchable store and lease store.
public enum MVCCModule {}
