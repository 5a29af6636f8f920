// The sample app's screens: Chat, Personalize (paste notes, a progress bar, cancel) and Adapters
// (use one, compress it to a patch, delete it). All state is in SampleModel.
import SwiftUI

@main
struct SampleApp: App {
    @StateObject private var model = SampleModel()
    @Environment(\.scenePhase) private var phase

    var body: some Scene {
        WindowGroup {
            ContentView(model: model)
                .task { await model.open() }
                .onChange(of: phase) { model.setForeground($0 == .active) }
        }
    }
}

struct ContentView: View {
    @ObservedObject var model: SampleModel

    var body: some View {
        VStack(alignment: .leading, spacing: 8) {
            Text(model.status + (model.active.map { " · adapter \($0)" } ?? "")).font(.caption)
            if let progress = model.training { TrainingProgress(progress: progress, cancel: model.cancel) }
            TabView {
                ChatView(model: model).tabItem { Label("Chat", systemImage: "bubble.left") }
                PersonalizeView(model: model).tabItem { Label("Personalize", systemImage: "wand.and.stars") }
                AdaptersView(model: model).tabItem { Label("Adapters", systemImage: "square.stack") }
            }
        }
        .padding()
        .alert(model.message ?? "", isPresented: Binding(get: { model.message != nil }, set: { if !$0 { model.message = nil } })) {
            Button("OK", role: .cancel) {}
        }
    }
}

struct TrainingProgress: View {
    let progress: RunProgress
    let cancel: () -> Void

    var body: some View {
        HStack {
            VStack(alignment: .leading) {
                if progress.steps == 0 {
                    Text("Preparing \(progress.name)…")
                    ProgressView()
                } else {
                    Text("\(progress.name): step \(progress.step)/\(progress.steps)" + (progress.loss.map { String(format: ", loss %.2f", $0) } ?? ""))
                    ProgressView(value: Double(progress.step), total: Double(progress.steps))
                }
            }
            Button("Cancel", action: cancel)
        }
    }
}

struct ChatView: View {
    @ObservedObject var model: SampleModel
    @State private var draft = ""

    var body: some View {
        VStack {
            List(model.turns) { turn in Text("\(turn.role == "user" ? "You" : "Model"): \(turn.text)") }
            HStack {
                TextField("Message", text: $draft).textFieldStyle(.roundedBorder)
                Button("Send") { model.send(draft); draft = "" }.disabled(!model.ready || model.replying)
            }
        }
    }
}

struct PersonalizeView: View {
    @ObservedObject var model: SampleModel
    @State private var name = "my-notes"
    @State private var notes = ""

    var body: some View {
        VStack(alignment: .leading) {
            Text("Paste your notes: the model learns their facts and style on this phone; nothing leaves it.")
            TextField("Adapter name", text: $name).textFieldStyle(.roundedBorder)
            TextEditor(text: $notes).border(.secondary)
            Button("Personalize") { model.personalize(name, notes: notes) }
                .disabled(!model.ready || model.training != nil || notes.isEmpty)
        }
    }
}

struct AdaptersView: View {
    @ObservedObject var model: SampleModel

    var body: some View {
        List {
            Button { model.use(nil) } label: { Label("Base model", systemImage: model.active == nil ? "largecircle.fill.circle" : "circle") }
            ForEach(model.adapters, id: \.self) { name in
                HStack {
                    Button { model.use(name) } label: { Label(name, systemImage: model.active == name ? "largecircle.fill.circle" : "circle") }
                    Spacer()
                    Button("Patch") { model.patch(name) }.buttonStyle(.borderless)
                    Button("Delete", role: .destructive) { model.delete(name) }.buttonStyle(.borderless)
                }
            }
        }
    }
}
