// The sample app's adapters and training runs, as android/sample's Personalization.kt (which the
// JVM suite runs): everything in the app's Application Support directory,
//   adapters/NAME  a finished adapter (PEFT files), one per user or per task;
//   runs/NAME      an unfinished run: its notes and its last checkpoint, there while the run is
//                  paused (the app went to the background) or was cut short (iOS killed the app).
import Adaptkit
import AdaptkitFFI
import Foundation

/// How the app trains on a user's notes: LoRA, a checkpoint every 5 steps, within `budgetMb`.
func notesConfig(steps: UInt32 = 60, budgetMb: Double? = nil) -> TrainConfig {
    TrainConfig(method: "lora", rank: 8, steps: steps, batch: 2, seq: 128, evalEvery: 0,
                checkpointEvery: 5, heldOutFraction: 0, memoryBudgetMb: budgetMb)
}

enum PersonalizationError: LocalizedError {
    case badName(String)
    case noRun(String)

    var errorDescription: String? {
        switch self {
        case let .badName(name): return "an adapter name is 1-64 letters, digits, '-' or '_': '\(name)'"
        case let .noRun(name): return "no unfinished run '\(name)'"
        }
    }
}

struct Personalization: Sendable {
    let model: LanguageModel
    private let adapters: URL
    private let runs: URL
    private static let notesKey = "notes.txt"
    private static let checkpointKey = "checkpoint.safetensors"

    init(model: LanguageModel, files: URL) {
        self.model = model
        adapters = files.appendingPathComponent("adapters", isDirectory: true)
        runs = files.appendingPathComponent("runs", isDirectory: true)
    }

    /// The finished adapters' names (a saved config marks an adapter complete).
    func adapterNames() -> [String] { Self.names(in: adapters, marker: "adapter_config.json") }

    /// Runs not finished (paused, or killed with the app), which `resume` continues.
    func unfinished() -> [String] { Self.names(in: runs, marker: Self.notesKey) }

    /// Trains the adapter `name` on `notes` from the start. Cancelling the iterating task pauses
    /// the run (the runtime saves a checkpoint first); when it finishes, the adapter is saved
    /// under `name` and the run's files are removed.
    func start(_ name: String, notes: String, config: TrainConfig = notesConfig()) throws -> AsyncThrowingStream<Training, Error> {
        try? FileManager.default.removeItem(at: try directory(runs, name))
        try storage(runs, name).write(key: Self.notesKey, bytes: Data(notes.utf8))
        return try train(name, notes: notes, config: config)
    }

    /// Continues the unfinished run `name`, from its checkpoint when it saved one, on its notes.
    func resume(_ name: String, config: TrainConfig = notesConfig()) throws -> AsyncThrowingStream<Training, Error> {
        guard let notes = try storage(runs, name).read(key: Self.notesKey) else { throw PersonalizationError.noRun(name) }
        return try train(name, notes: String(decoding: notes, as: UTF8.self), config: config)
    }

    /// Generates with adapter `name` alone (nil: the base model).
    func use(_ name: String?) async throws {
        try model.detachAll()
        if let name { try model.attach(try await model.load(.storage(storage: try storage(adapters, name)))) }
    }

    /// Compresses adapter `name` into a patch (`.akp` bytes, what a sync server takes).
    func patch(_ name: String) async throws -> CompressedPatch {
        try await model.compress(.storage(storage: try storage(adapters, name)))
    }

    /// Forgets the unfinished run `name` (a checkpoint the stopping run still writes lands in a
    /// run without notes, which is not unfinished, and the next `start` of that name clears it).
    func discard(_ name: String) throws { try? FileManager.default.removeItem(at: try directory(runs, name)) }

    func delete(_ name: String) throws {
        try? FileManager.default.removeItem(at: try directory(adapters, name))
        try discard(name)
    }

    private func train(_ name: String, notes: String, config: TrainConfig) throws -> AsyncThrowingStream<Training, Error> {
        let run = try storage(runs, name)
        let runDirectory = try directory(runs, name)
        let adapterStorage = try storage(adapters, name)
        var config = config
        config.resume = try run.exists(key: Self.checkpointKey)
        let events = model.train(TrainingData(text: notes, name: "\(name) notes"), config: config, storage: run)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await event in events {
                        if case let .finished(result) = event {
                            try await result.adapter.save(storage: adapterStorage)
                            try? FileManager.default.removeItem(at: runDirectory)
                        }
                        continuation.yield(event)
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    private func storage(_ root: URL, _ name: String) throws -> Storage {
        try Storage.directory(path: try directory(root, name).path)
    }

    /// `name`'s directory under `root`: a plain name, so nothing is written outside the app's files.
    private func directory(_ root: URL, _ name: String) throws -> URL {
        let allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
        guard (1...64).contains(name.count), name.unicodeScalars.allSatisfy(allowed.contains) else {
            throw PersonalizationError.badName(name)
        }
        return root.appendingPathComponent(name, isDirectory: true)
    }

    private static func names(in root: URL, marker: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? []
        return entries.filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent(marker).path) }
            .map(\.lastPathComponent).sorted()
    }
}
