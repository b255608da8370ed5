/// Durable storage: WAL segments, snapshot files and the LMDB backend.
public enum StorageModule {}
