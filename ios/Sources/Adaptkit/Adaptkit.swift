// adaptkit for Swift: async/await and AsyncThrowingStream over the generated bindings
// (AdaptkitFFI). No logic of its own: cancelling the Task that iterates a stream cancels the
// runtime's call (a training run stops at its next step and saves its checkpoint); errors are
// AdaptError with the core's message; a released model throws AdaptError.Closed.
import AdaptkitFFI
import Foundation

public typealias Device = AdaptkitFFI.Device

/// What a training stream yields: the run's events, then its result.
public enum Training {
    case progress(TrainEvent)
    case finished(TrainResult)
}

private final class Forward<E>: @unchecked Sendable {
    let send: (E) -> Void
    init(_ send: @escaping (E) -> Void) { self.send = send }
}

private final class TokenForward: GenerationListener, @unchecked Sendable {
    let forward: Forward<GenerationEvent>
    init(_ forward: Forward<GenerationEvent>) { self.forward = forward }
    func onEvent(event: GenerationEvent) { forward.send(event) }
}

private final class TrainForward: TrainListener, @unchecked Sendable {
    let forward: Forward<TrainEvent>
    init(_ forward: Forward<TrainEvent>) { self.forward = forward }
    func onEvent(event: TrainEvent) { forward.send(event) }
}

/// A language model on this device. `close()` (or dropping the last reference) frees it.
public final class LanguageModel: @unchecked Sendable {
    public let raw: Model

    /// Opens a GGUF file (memory-mapped: the OS pages the frozen weights as memory allows).
    public init(path: String, threads: UInt32 = 0, device: Device = .cpu, trainable: Bool = true, cache: Storage? = nil) async throws {
        raw = try await Model.open(path: path, options: OpenOptions(threads: threads, device: device, trainable: trainable, cache: cache))
    }

    public func info() throws -> ModelInfo { try raw.info() }

    /// The text generated from `prompt`, piece by piece; cancelling the iterating task stops it.
    public func generate(_ prompt: String, options: GenerateOptions = GenerateOptions()) -> AsyncThrowingStream<String, Error> {
        stream(.text(text: prompt), options)
    }

    /// The assistant's reply to `messages`, piece by piece.
    public func chat(_ messages: [ChatMessage], options: GenerateOptions = GenerateOptions()) -> AsyncThrowingStream<String, Error> {
        stream(.chat(messages: messages), options)
    }

    private func stream(_ prompt: Prompt, _ options: GenerateOptions) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let listener = TokenForward(Forward { event in
                switch event {
                case let .token(_, text) where !text.isEmpty: continuation.yield(text)
                case let .tail(text) where !text.isEmpty: continuation.yield(text)
                default: break
                }
            })
            let task = Task {
                do {
                    _ = try await raw.generate(prompt: prompt, options: options, listener: listener, cancel: nil)
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Trains an adapter: `.progress` for each event, then `.finished`. Checkpoints go to
    /// `storage`; cancelling stops the run at its next step and saves one, and the same call
    /// with `config.resume = true` continues it.
    public func train(_ data: TrainingData, config: TrainConfig, storage: Storage) -> AsyncThrowingStream<Training, Error> {
        AsyncThrowingStream { continuation in
            let cancel = CancelToken()
            let listener = TrainForward(Forward { continuation.yield(.progress($0)) })
            let task = Task {
                do {
                    let result = try await raw.train(data: data, config: config, storage: storage, listener: listener, cancel: cancel)
                    continuation.yield(.finished(result))
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in
                cancel.cancel()
                task.cancel()
            }
        }
    }

    public func load(_ source: AdapterSource, trustedKeys: [String] = []) async throws -> Adapter {
        try await raw.loadAdapter(source: source, options: LoadOptions(trustedKeys: trustedKeys, allowPort: false))
    }

    @discardableResult
    public func attach(_ adapter: Adapter, scale: Float = 1) throws -> UInt64 { try raw.attach(adapter: adapter, scale: scale) }

    public func detach(_ id: UInt64) throws { try raw.detach(id: id) }

    public func detachAll() throws { try raw.detachAll() }

    /// The memory plan `config` would train with; throws `AdaptError.MemoryBudget` when none fits.
    public func plan(_ config: TrainConfig) async throws -> MemoryPlan { try await raw.plan(config: config) }

    /// Compresses an adapter into a ComPEFT patch (`.akp` bytes), signed when a key is given.
    public func compress(_ source: AdapterSource, options: CompressOptions = CompressOptions()) async throws -> CompressedPatch {
        try await AdaptkitFFI.compress(model: raw, source: source, options: options)
    }

    /// Frees the model's memory now; later calls throw `AdaptError.Closed`.
    public func close() { raw.release() }
}

/// Greedy decoding, at most `maxTokens` tokens.
public func greedy(_ maxTokens: UInt32 = 256) -> GenerateOptions {
    GenerateOptions(maxTokens: maxTokens, temperature: 0)
}
