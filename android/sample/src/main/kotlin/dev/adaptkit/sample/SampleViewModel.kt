// The sample app's state: the model, the chat, the training run and the adapters. Training
// pauses when the app leaves the foreground (the runtime checkpoints at its next step) and
// resumes when it returns, or on the next launch after the system killed the app.
package dev.adaptkit.sample

import android.app.ActivityManager
import android.app.Application
import android.content.Context
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import androidx.lifecycle.viewModelScope
import dev.adaptkit.LanguageModel
import dev.adaptkit.Training
import dev.adaptkit.ffi.AdaptException
import dev.adaptkit.ffi.ChatMessage
import dev.adaptkit.ffi.Device
import dev.adaptkit.ffi.GenerateOptions
import dev.adaptkit.ffi.Storage
import dev.adaptkit.ffi.TrainEvent
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File

data class Turn(val role: String, val text: String)

data class RunProgress(val name: String, val step: Int, val steps: Int, val loss: Float?)

data class UiState(
    val status: String = "Opening the model…",
    val ready: Boolean = false,
    val turns: List<Turn> = emptyList(),
    val replying: Boolean = false,
    val training: RunProgress? = null,
    val adapters: List<String> = emptyList(),
    val active: String? = null,
    val message: String? = null,
)

class SampleViewModel(private val app: Application) : AndroidViewModel(app), DefaultLifecycleObserver {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state.asStateFlow()

    private var model: LanguageModel? = null
    private var personalization: Personalization? = null
    private var training: Job? = null
    private var foreground = true

    init {
        ProcessLifecycleOwner.get().lifecycle.addObserver(this)
        viewModelScope.launch {
            try {
                val path = withContext(Dispatchers.IO) { unpackModel() }
                // A few big cores beat all of them on phones; the GPU when there is a real one.
                val opened = LanguageModel.open(
                    path.path,
                    threads = minOf(4, Runtime.getRuntime().availableProcessors()),
                    device = Device.AUTO,
                    cache = Storage.directory(File(app.cacheDir, "adaptkit").path),
                )
                model = opened
                personalization = Personalization(opened, app.filesDir)
                _state.update { it.copy(status = "Ready on ${opened.info.device}", ready = true) }
                refresh()
                resumeUnfinished()
            } catch (e: AdaptException) {
                _state.update { it.copy(status = "Could not open the model: ${e.message}") }
            }
        }
    }

    fun send(text: String) {
        val model = model ?: return
        if (_state.value.replying || text.isBlank()) return
        val history = _state.value.turns + Turn("user", text)
        _state.update { it.copy(turns = history + Turn("assistant", ""), replying = true) }
        viewModelScope.launch {
            try {
                model.chat(history.map { ChatMessage(it.role, it.text) }, GenerateOptions(maxTokens = 256u)).collect { piece ->
                    _state.update { s -> s.copy(turns = s.turns.dropLast(1) + s.turns.last().let { it.copy(text = it.text + piece) }) }
                }
            } catch (e: AdaptException) {
                show(e)
            } finally {
                _state.update { it.copy(replying = false) }
            }
        }
    }

    fun personalize(name: String, notes: String) = train(name) { start(name, notes, config()) }

    /** Stops the run and forgets it. */
    fun cancel() {
        val name = _state.value.training?.name ?: return
        training?.cancel()
        personalization?.discard(name)
    }

    fun use(name: String?) = act { use(name); _state.update { it.copy(active = name) } }

    fun delete(name: String) = act {
        if (_state.value.active == name) use(null)
        delete(name)
        _state.update { it.copy(active = it.active.takeIf { a -> a != name }) }
    }

    fun patch(name: String) = act {
        val patch = patch(name)
        show("$name: a ${patch.bytes.size / 1024} KiB patch, ${"%.0f".format(patch.ratioVsF16)}× smaller than F16")
    }

    fun dismissMessage() = _state.update { it.copy(message = null) }

    override fun onStop(owner: LifecycleOwner) {
        foreground = false
        // Coroutine cancellation is the runtime's cancel: it checkpoints at its next step.
        training?.cancel()
    }

    override fun onStart(owner: LifecycleOwner) {
        foreground = true
        resumeUnfinished()
    }

    override fun onCleared() {
        ProcessLifecycleOwner.get().lifecycle.removeObserver(this)
        model?.close()
    }

    private fun resumeUnfinished() {
        val personalization = personalization ?: return
        val name = personalization.unfinished().firstOrNull() ?: return
        train(name) { resume(name, config()) }
    }

    private fun train(name: String, begin: Personalization.() -> Flow<Training>) {
        val personalization = personalization ?: return
        if (!foreground || training?.isActive == true) return
        _state.update { it.copy(training = RunProgress(name, 0, 0, null)) }
        training = viewModelScope.launch {
            try {
                personalization.begin().collect { event ->
                    when (event) {
                        is Training.Progress -> (event.event as? TrainEvent.Step)?.let { s ->
                            _state.update { it.copy(training = RunProgress(name, s.step.toInt(), s.steps.toInt(), s.loss)) }
                        }
                        is Training.Finished -> {
                            personalization.use(name)
                            _state.update { it.copy(active = name) }
                            show("$name is ready: loss ${"%.2f".format(event.result.report.trainLoss)}")
                        }
                    }
                }
            } catch (e: AdaptException) {
                show(e)
            } finally {
                _state.update { it.copy(training = null) }
                refresh()
            }
        }
    }

    /** Half the memory the system has free now: training plans its micro-batches to fit it. */
    private fun config() = notesConfig(budgetMb = ActivityManager.MemoryInfo().let { info ->
        (app.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(info)
        info.availMem / 2.0 / (1 shl 20)
    })

    private fun act(block: suspend Personalization.() -> Unit) {
        val personalization = personalization ?: return
        viewModelScope.launch {
            try {
                personalization.block()
            } catch (e: AdaptException) {
                show(e)
            } finally {
                refresh()
            }
        }
    }

    private fun refresh() {
        val adapters = personalization?.adapters() ?: return
        _state.update { it.copy(adapters = adapters) }
    }

    private fun show(e: AdaptException) = show(e.message ?: e.toString())

    private fun show(message: String) = _state.update { it.copy(message = message) }

    /** The bundled model, copied once into the files directory (an asset cannot be memory-mapped). */
    private fun unpackModel(): File {
        val model = File(app.filesDir, "model.gguf")
        if (model.exists()) return model
        val partial = File(app.filesDir, "model.gguf.partial")
        app.assets.open("model.gguf").use { input -> partial.outputStream().use { input.copyTo(it, 1 shl 20); it.fd.sync() } }
        check(partial.renameTo(model)) { "could not rename $partial" }
        return model
    }
}
