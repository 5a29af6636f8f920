// The sample app's state: the model, the chat, the training run and the adapters. Training
// pauses when the app leaves the foreground (the runtime checkpoints at its next step) and
// resumes when it returns, or on the next launch after iOS killed the app.
import Adaptkit
import AdaptkitFFI
import Foundation
import os

struct Turn: Identifiable {
    let id = UUID()
    let role: String
    var text: String
}

struct RunProgress {
    let name: String
    var step: UInt32 = 0
    var steps: UInt32 = 0
    var loss: Float?
}

@MainActor
final class SampleModel: ObservableObject {
    @Published var status = "Opening the model…"
    @Published var turns: [Turn] = []
    @Published var replying = false
    @Published var training: RunProgress?
    @Published var adapters: [String] = []
    @Published var active: String?
    @Published var message: String?

    private var model: LanguageModel?
    private var personalization: Personalization?
    private var trainingTask: Task<Void, Never>?
    private var foreground = true

    var ready: Bool { model != nil }

    func open() async {
        guard model == nil else { return }
        do {
            let files = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            let caches = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            // The bundled model is read in place: app bundles are files, so it is memory-mapped.
            guard let path = Bundle.main.path(forResource: "model", ofType: "gguf") else {
                status = "model.gguf is not in the app bundle (see README, iOS)"
                return
            }
            // A few big cores beat all of them on phones; Metal when there is a GPU.
            let opened = try await LanguageModel(
                path: path, threads: UInt32(min(4, ProcessInfo.processInfo.activeProcessorCount)), device: .auto,
                cache: try Storage.directory(path: caches.appendingPathComponent("adaptkit").path))
            model = opened
            personalization = Personalization(model: opened, files: files)
            status = "Ready on \(try opened.info().device)"
            refresh()
            resumeUnfinished()
        } catch {
            status = "Could not open the model: \(error.localizedDescription)"
        }
    }

    func send(_ text: String) {
        guard let model, !replying, !text.isEmpty else { return }
        let history = turns + [Turn(role: "user", text: text)]
        turns = history + [Turn(role: "assistant", text: "")]
        replying = true
        Task {
            defer { replying = false }
            do {
                for try await piece in model.chat(history.map { ChatMessage(role: $0.role, content: $0.text) }) {
                    turns[turns.count - 1].text += piece
                }
            } catch {
                message = error.localizedDescription
            }
        }
    }

    func personalize(_ name: String, notes: String) {
        train(name) { try $0.start(name, notes: notes, config: self.config()) }
    }

    /// Stops the run and forgets it.
    func cancel() {
        guard let name = training?.name else { return }
        trainingTask?.cancel()
        try? personalization?.discard(name)
    }

    func use(_ name: String?) { act { try await $0.use(name); self.active = name } }

    func patch(_ name: String) {
        act { personalization in
            let patch = try await personalization.patch(name)
            self.message = "\(name): a \(patch.bytes.count / 1024) KiB patch, \(Int(patch.ratioVsF16))× smaller than F16"
        }
    }

    func delete(_ name: String) {
        act { personalization in
            if self.active == name { try await personalization.use(nil); self.active = nil }
            try personalization.delete(name)
        }
    }

    /// Called with the scene's phase: the background pauses training, the foreground resumes it.
    func setForeground(_ isForeground: Bool) {
        foreground = isForeground
        if isForeground { resumeUnfinished() } else { trainingTask?.cancel() }
    }

    private func resumeUnfinished() {
        guard let name = personalization?.unfinished().first else { return }
        train(name) { try $0.resume(name, config: self.config()) }
    }

    private func train(_ name: String, _ begin: @escaping (Personalization) throws -> AsyncThrowingStream<Training, Error>) {
        guard let personalization, foreground, trainingTask == nil else { return }
        training = RunProgress(name: name)
        trainingTask = Task {
            defer {
                training = nil
                trainingTask = nil
                refresh()
            }
            do {
                for try await event in try begin(personalization) {
                    switch event {
                    case let .progress(.step(step, steps, loss, _, _, _, _)):
                        training = RunProgress(name: name, step: step, steps: steps, loss: loss)
                    case let .finished(result):
                        try await personalization.use(name)
                        active = name
                        message = "\(name) is ready: loss \(String(format: "%.2f", result.report.trainLoss))"
                    default:
                        break
                    }
                }
            } catch is CancellationError {
            } catch {
                message = error.localizedDescription
            }
        }
    }

    /// Half the memory iOS lets this app take now: training plans its micro-batches to fit it.
    private func config() -> TrainConfig {
        notesConfig(budgetMb: Double(os_proc_available_memory()) / 2 / 1_048_576)
    }

    private func act(_ body: @escaping (Personalization) async throws -> Void) {
        guard let personalization else { return }
        Task {
            defer { refresh() }
            do { try await body(personalization) } catch { message = error.localizedDescription }
        }
    }

    private func refresh() {
        adapters = personalization?.adapterNames() ?? []
    }
}
