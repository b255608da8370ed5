import Foundation
import Logging
import Testing
@testable import Server

@Suite struct JSONLogHandlerTests {
    private func decode(_ line: [UInt8]) throws -> [String: Any] {
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(line.dropLast().contains(UInt8(ascii: "\n")) == false)
        let object = try JSONSerialization.jsonObject(with: Data(line))
        return try #require(object as? [String: Any])
    }

    /// `systemd/journal` is journald (never a file of that name): refused with a clear error
    /// where journald does not run, a journal sink where it does (E2ESystemdBootTests checks the
    /// entries under a real systemd).
    @Test func journalOutputNeedsJournald() throws {
        if FileManager.default.fileExists(atPath: LogSink.journalSocket) {
            #expect(try LogSink.forEtcdOutputs(["systemd/journal"]).count == 1)
        } else {
            #expect(throws: LogSinkError.self) { try LogSink.forEtcdOutputs(["systemd/journal"]) }
            do { _ = try LogSink.forEtcdOutputs(["systemd/journal"]) } catch {
                #expect("\(error)" == "cannot use --log-outputs systemd/journal: journald is not running (no /run/systemd/journal/socket)")
            }
            #expect(!FileManager.default.fileExists(atPath: "systemd/journal"))
        }
        #expect(LogSink.priority(.info) == 6 && LogSink.priority(.warning) == 4 && LogSink.priority(.critical) == 2)
    }

    @Test func lineHasZapFieldsInOrder() throws {
        let line = JSONLogFormat.line(
            level: .warning, timestamp: "2026-11-21T21:00:00.000000Z", caller: "Server/Foo.swift:12",
            logger: "", message: "hello", error: nil, metadata: [:])
        #expect(String(decoding: line, as: UTF8.self) ==
            #"{"level":"warn","ts":"2026-11-21T21:00:00.000000Z","caller":"Server/Foo.swift:12","msg":"hello"}"# + "\n")
    }

    @Test func escapingRoundTripsThroughAJSONParser() throws {
        let nasty = "quote\" backslash\\ newline\n tab\t cr\r nul\u{0} bell\u{7} del\u{7F} é 日本 🚀 \u{2028}"
        let line = JSONLogFormat.line(
            level: .info, timestamp: "t", caller: "c:1", logger: "lbl\"x", message: nasty,
            error: "bad\nthing", metadata: [nasty: .string(nasty)])
        let object = try decode(line)
        #expect(object["msg"] as? String == nasty)
        #expect(object[nasty] as? String == nasty)
        #expect(object["logger"] as? String == "lbl\"x")
        #expect(object["error"] as? String == "bad\nthing")
        // Control characters never appear raw.
        #expect(!line.dropLast().contains { $0 < 0x20 })
    }

    @Test func metadataTypesAndReservedKeys() throws {
        let line = JSONLogFormat.line(
            level: .error, timestamp: "t", caller: "c:1", logger: "", message: "m", error: nil,
            metadata: [
                "count": .stringConvertible(42),
                "big": .stringConvertible(UInt64.max),
                "ratio": .stringConvertible(0.5),
                "nan": .stringConvertible(Double.nan),
                "ok": .stringConvertible(true),
                "list": .array([.string("a"), .stringConvertible(1)]),
                "dict": .dictionary(["k": .string("v")]),
                "msg": .string("shadow"),
            ])
        let text = String(decoding: line, as: UTF8.self)
        #expect(text.contains(#""big":18446744073709551615"#))
        let object = try decode(line)
        #expect(object["level"] as? String == "error")
        #expect(object["count"] as? Int == 42)
        #expect(object["ratio"] as? Double == 0.5)
        #expect(object["nan"] as? String == "nan")
        #expect(object["ok"] as? Bool == true)
        #expect((object["list"] as? [Any])?.count == 2)
        #expect((object["dict"] as? [String: String]) == ["k": "v"])
        #expect(object["msg"] as? String == "m")
        #expect(object["meta.msg"] as? String == "shadow")
    }

    @Test func levelNames() {
        let expected: [(Logger.Level, String)] = [
            (.trace, "debug"), (.debug, "debug"), (.info, "info"), (.notice, "info"),
            (.warning, "warn"), (.error, "error"), (.critical, "fatal"),
        ]
        for (level, name) in expected { #expect(level.zapName == name) }
        #expect(Logger.Level(etcdName: "warn") == .warning)
        #expect(Logger.Level(etcdName: "PANIC") == .critical)
        #expect(Logger.Level(etcdName: "loud") == nil)
    }

    @Test func timestampAndCaller() {
        #expect(JSONLogFormat.timestamp(seconds: 0, microseconds: 5) == "1970-01-01T00:00:00.000005Z")
        #expect(JSONLogFormat.timestamp(seconds: 1_795_294_800, microseconds: 123_456) == "2026-11-21T21:00:00.123456Z")
        #expect(JSONLogFormat.caller(file: "Server/ClientPort.swift", line: 7) == "Server/ClientPort.swift:7")
        #expect(JSONLogFormat.caller(file: "/a/b/c/d.swift", line: 1) == "c/d.swift:1")
        let now = JSONLogFormat.now()
        #expect(now.count == 27 && now.hasSuffix("Z"))
    }

    @Test func handlerFiltersLevelsAndMergesMetadata() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("swetcd-log-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try LogSink(appendingTo: path)
        var logger = Logger(label: "test") { label in
            JSONLogHandler(label: label, level: .info, sinks: [sink])
        }
        logger[metadataKey: "member"] = "abc"
        logger.debug("dropped")
        logger.info("kept", metadata: ["member": "override", "n": .stringConvertible(3)])
        logger.warning("second")
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        let first = try decode(Array((lines[0] + "\n").utf8))
        #expect(first["msg"] as? String == "kept")
        #expect(first["member"] as? String == "override")
        #expect(first["n"] as? Int == 3)
        #expect(first["logger"] as? String == "test")
        #expect((first["caller"] as? String)?.hasPrefix("ServerTests/JSONLogHandlerTests.swift:") == true)
        let second = try decode(Array((lines[1] + "\n").utf8))
        #expect(second["level"] as? String == "warn")
        #expect(second["member"] as? String == "abc")
    }

    @Test func etcdLogOutputs() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("swetcd-log-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sinks = try LogSink.forEtcdOutputs(["default", "stderr", "stdout", path, path])
        #expect(sinks.count == 3)
        #expect(sinks[0] === LogSink.standardError)
        #expect(sinks[1] === LogSink.standardOutput)
        sinks[2].write(line: Array("x\n".utf8))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "x\n")
        #expect(throws: LogSinkError.self) { _ = try LogSink.forEtcdOutputs(["/nonexistent-dir-swetcd/x.log"]) }
    }

    @Test func unopenableFileThrows() {
        #expect(throws: LogSinkError.self) {
            _ = try LogSink(appendingTo: "/nonexistent-dir-swetcd/x.log")
        }
    }
}
