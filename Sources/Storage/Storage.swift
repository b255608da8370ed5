/// Durable storage: WAL segments, snapshot files, the data directory and the Raft log kept on
/// them (the LMDB backend is the LMDBBackend module).
public enum StorageModule {}
