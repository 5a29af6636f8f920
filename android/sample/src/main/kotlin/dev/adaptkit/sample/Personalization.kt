// The sample app's adapters and training runs, in plain Kotlin (no Android imports) so the JVM
// suite runs it exactly as the app does. Everything lives in the app's files directory:
//   files/adapters/NAME  a finished adapter (PEFT files), one per user or per task;
//   files/runs/NAME      an unfinished run: its notes and its last checkpoint, there while the
//                        run is paused (the app went to the background) or was cut short (the
//                        system killed the app).
package dev.adaptkit.sample

import dev.adaptkit.LanguageModel
import dev.adaptkit.Training
import dev.adaptkit.ffi.AdapterSource
import dev.adaptkit.ffi.CompressedPatch
import dev.adaptkit.ffi.Storage
import dev.adaptkit.ffi.TrainConfig
import dev.adaptkit.ffi.TrainingData
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.collect
import kotlinx.coroutines.flow.flow
import java.io.File

/** How the app trains on a user's notes: LoRA, a checkpoint every 5 steps, within [budgetMb]. */
fun notesConfig(steps: Int = 60, budgetMb: Double? = null) = TrainConfig(
    method = "lora", rank = 8u, steps = steps.toUInt(), batch = 2u, seq = 128u,
    evalEvery = 0u, heldOutFraction = 0f, checkpointEvery = 5u, memoryBudgetMb = budgetMb,
)

class Personalization(private val model: LanguageModel, filesDir: File) {
    private val adapters = File(filesDir, "adapters")
    private val runs = File(filesDir, "runs")

    /** The finished adapters' names (a saved config marks an adapter complete). */
    fun adapters(): List<String> = names(adapters, "adapter_config.json")

    /** Runs not finished (paused, or killed with the app), which [resume] continues. */
    fun unfinished(): List<String> = names(runs, NOTES)

    /**
     * Trains the adapter [name] on [notes] from the start. Cancelling the collector pauses the
     * run: the runtime saves a checkpoint first. When the run finishes, the adapter is saved under
     * [name] and the run's files are removed.
     */
    fun start(name: String, notes: String, config: TrainConfig = notesConfig()): Flow<Training> = flow {
        dir(runs, name).deleteRecursively()
        runStorage(name).write(NOTES, notes.toByteArray())
        train(name, notes, config).collect { emit(it) }
    }

    /** Continues the unfinished run [name], from its checkpoint when it saved one, on its notes. */
    fun resume(name: String, config: TrainConfig = notesConfig()): Flow<Training> = flow {
        val notes = runStorage(name).read(NOTES) ?: throw IllegalStateException("no unfinished run '$name'")
        train(name, String(notes), config).collect { emit(it) }
    }

    private fun train(name: String, notes: String, config: TrainConfig): Flow<Training> = flow {
        val run = runStorage(name)
        val resumed = config.copy(resume = run.exists(CHECKPOINT))
        model.train(TrainingData(text = notes, name = "$name notes"), resumed, run).collect { event ->
            if (event is Training.Finished) {
                event.result.adapter.save(Storage.directory(dir(adapters, name).path))
                dir(runs, name).deleteRecursively()
            }
            emit(event)
        }
    }

    /** Generates with adapter [name] alone (none: the base model). */
    suspend fun use(name: String?) {
        model.detachAll()
        if (name != null) model.attach(model.load(AdapterSource.Storage(Storage.directory(dir(adapters, name).path))))
    }

    /** Compresses adapter [name] into a patch (`.akp` bytes, what a sync server takes). */
    suspend fun patch(name: String): CompressedPatch =
        model.compress(AdapterSource.Storage(Storage.directory(dir(adapters, name).path)))

    /**
     * Forgets the unfinished run [name]. A checkpoint the stopping run still writes lands in a
     * run without notes, which is not unfinished, and the next [start] of that name clears it.
     */
    fun discard(name: String) {
        dir(runs, name).deleteRecursively()
    }

    fun delete(name: String) {
        dir(adapters, name).deleteRecursively()
        discard(name)
    }

    private fun runStorage(name: String) = Storage.directory(dir(runs, name).path)

    private fun names(root: File, marker: String): List<String> =
        root.listFiles().orEmpty().filter { File(it, marker).isFile }.map { it.name }.sorted()

    /** [name]'s directory under [root]: a plain name, so nothing is written outside the files directory. */
    private fun dir(root: File, name: String): File {
        require(NAME.matches(name)) { "an adapter name is 1-64 letters, digits, '-' or '_': '$name'" }
        return File(root, name)
    }

    private companion object {
        val NAME = Regex("[A-Za-z0-9_-]{1,64}")
        const val NOTES = "notes.txt"
        const val CHECKPOINT = "checkpoint.safetensors"
    }
}
