/// The Raft consensus core: a pure, deterministic state machine.
/// (Filled in by the Raft issue; see docs/ARCHITECTURE.md.)
public enum RaftModule {}
