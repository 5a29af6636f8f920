// The Kotlin face on the JVM, against the real model: streaming; the sample app's training
// (android/sample's Personalization) killed with its process, resumed, paused by coroutine
// cancellation and resumed again to the result of an uninterrupted run; adapters saved and
// reloaded, a signed patch, and the error paths. Run by scripts/jvm-test.sh: JvmTestKt MODEL.gguf WORKDIR NOTES.txt
package dev.adaptkit.test

import dev.adaptkit.LanguageModel
import dev.adaptkit.Training
import dev.adaptkit.greedy
import dev.adaptkit.user
import dev.adaptkit.sample.Personalization
import dev.adaptkit.sample.notesConfig
import dev.adaptkit.ffi.AdaptException
import dev.adaptkit.ffi.AdapterSource
import dev.adaptkit.ffi.CancelToken
import dev.adaptkit.ffi.CompressOptions
import dev.adaptkit.ffi.GenerationEvent
import dev.adaptkit.ffi.GenerationListener
import dev.adaptkit.ffi.PeftFiles
import dev.adaptkit.ffi.Prompt
import dev.adaptkit.ffi.Storage
import dev.adaptkit.ffi.TrainConfig
import dev.adaptkit.ffi.TrainEvent
import dev.adaptkit.ffi.TrainResult
import dev.adaptkit.ffi.TrainingData
import dev.adaptkit.ffi.keygen
import dev.adaptkit.ffi.verify
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.collect
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import java.io.File
import kotlin.system.exitProcess

private var failures = 0

private fun test(name: String, body: suspend CoroutineScope.() -> Unit) = runBlocking {
    val started = System.nanoTime()
    try {
        body()
        println("test $name ... ok (%.1f s)".format((System.nanoTime() - started) / 1e9))
    } catch (t: Throwable) {
        failures++
        println("test $name ... FAILED: $t")
        t.printStackTrace(System.out)
    }
}

private fun check(condition: Boolean, message: () -> String) {
    if (!condition) throw AssertionError(message())
}

private inline fun <reified E : Throwable> expect(what: String, body: () -> Unit): E {
    try {
        body()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("$what: expected ${E::class.simpleName}, got $e")
    }
    throw AssertionError("$what: expected ${E::class.simpleName}, nothing was thrown")
}

private fun config(steps: Int) = TrainConfig(
    rank = 4u, steps = steps.toUInt(), batch = 1u, seq = 32u, lr = 2e-4f, evalEvery = 0u,
    checkpointEvery = 0u, heldOutFraction = 0f,
)

/** The sample app's training, small: 6 steps, a checkpoint every 2. */
fun killTestConfig() = notesConfig(steps = 6).copy(rank = 4u, batch = 1u, seq = 32u, checkpointEvery = 2u)

private suspend fun finish(model: LanguageModel, data: TrainingData, config: TrainConfig, storage: Storage): TrainResult {
    var result: TrainResult? = null
    model.train(data, config, storage).collect { if (it is Training.Finished) result = it.result }
    return result!!
}

fun main(args: Array<String>) {
    val (modelPath, workPath, notesPath) = args
    val work = File(workPath).apply { deleteRecursively(); mkdirs() }
    val notes = File(notesPath).readText()
    val data = TrainingData(text = notes, name = "notes.txt")
    val model = runBlocking { LanguageModel.open(modelPath, threads = 2) }

    test("the model opens and streams what it reports") {
        check(model.info.architecture == "llama" && model.info.layers == 30u) { "info: ${model.info}" }
        val streamed = model.generate("The capital of France is", greedy(12)).toList().joinToString("")
        val report = model.complete(Prompt.Text("The capital of France is"), greedy(12))
        check(streamed == report.text && report.tokens.size == 12) { "streamed '$streamed' vs '${report.text}'" }
        check(report.decodeTokS > 0.0) { "no timing" }
        val reply = model.chat(listOf(user("Say hello.")), greedy(8)).toList().joinToString("")
        check(reply.isNotBlank()) { "empty chat reply" }
    }

    test("a run killed with the app resumes from its checkpoint, pauses, resumes, and ends as an uninterrupted run") {
        val files = File(work, "app")
        val losses = sortedMapOf<UInt, Float>()
        // The app, killed (SIGKILL) once its first checkpoint is on disk.
        val java = ProcessHandle.current().info().command().get()
        val app = ProcessBuilder(
            java, "-Djna.library.path=${System.getProperty("jna.library.path")}", "-cp", System.getProperty("java.class.path"),
            "dev.adaptkit.test.KilledRunKt", modelPath, files.path, notesPath,
        ).redirectErrorStream(true).start()
        for (line in app.inputStream.bufferedReader().lineSequence()) {
            val words = line.split(" ")
            if (words[0] == "step") losses[words[1].toUInt()] = words[2].toFloat()
            if (words[0] == "checkpoint") break
        }
        app.destroyForcibly().waitFor()
        val relaunched = Personalization(model, files)
        check(relaunched.unfinished() == listOf("notes") && relaunched.adapters().isEmpty()) { "after the kill: ${relaunched.unfinished()}" }
        val checkpoint = File(files, "runs/notes/checkpoint.safetensors")
        val killedAt = checkpoint.readBytes()

        // Relaunched, it resumes; one step later the app goes to the background and pauses it.
        val resumedSteps = mutableListOf<UInt>()
        val stepped = CompletableDeferred<Unit>()
        val job = launch(Dispatchers.Default) {
            relaunched.resume("notes", killTestConfig()).collect {
                val event = (it as? Training.Progress)?.event
                if (event is TrainEvent.Step) {
                    resumedSteps.add(event.step)
                    losses[event.step] = event.loss
                    stepped.complete(Unit)
                }
            }
        }
        stepped.await()
        job.cancelAndJoin()
        // The run stops at its next step and saves a newer checkpoint.
        var waited = 0
        while (checkpoint.readBytes().contentEquals(killedAt)) {
            check(waited < 600) { "no new checkpoint 60 s after the pause" }
            delay(100); waited++
        }
        check(resumedSteps.first() > 1u) { "the relaunched run started over: $resumedSteps" }

        // Back in the foreground: it finishes, saves the adapter and drops the checkpoint.
        relaunched.resume("notes", killTestConfig()).collect {
            val event = (it as? Training.Progress)?.event
            if (event is TrainEvent.Step) losses[event.step] = event.loss
        }
        check(relaunched.adapters() == listOf("notes") && relaunched.unfinished().isEmpty()) { "after finishing: ${relaunched.adapters()}" }

        val straight = Personalization(model, File(work, "straight"))
        val straightLosses = sortedMapOf<UInt, Float>()
        straight.start("notes", notes, killTestConfig()).collect {
            val event = (it as? Training.Progress)?.event
            if (event is TrainEvent.Step) straightLosses[event.step] = event.loss
        }
        // A step run after the pause and before the stop is never seen; every step seen matches.
        val matches = losses.keys.all { straightLosses[it]?.let { s -> Math.abs(losses[it]!! - s) < 1e-4 } == true }
        check(straightLosses.size == 6 && losses.firstKey() == 1u && losses.lastKey() == 6u && matches) {
            "interrupted $losses vs straight $straightLosses"
        }
        relaunched.use("notes")
        val interruptedText = model.complete(Prompt.Text("Saturday is bread day."), greedy(8)).tokens
        straight.use("notes")
        val straightText = model.complete(Prompt.Text("Saturday is bread day."), greedy(8)).tokens
        straight.use(null)
        check(interruptedText == straightText) { "generations differ: $interruptedText vs $straightText" }
        expect<IllegalArgumentException>("a name that leaves the files directory") { runBlocking { relaunched.use("../notes") } }
        check(relaunched.patch("notes").ratioVsF16 > 10.0) { "the adapter's patch" }
        relaunched.delete("notes")
        check(relaunched.adapters().isEmpty()) { "deleted, still listed" }
    }

    val adapterDir = Storage.directory(File(work, "adapter").path)
    test("an adapter is saved, reloaded, compressed to a signed patch, and attached") {
        val trained = finish(model, data, config(3), Storage.memory())
        trained.adapter.save(adapterDir)
        val reloaded = model.load(AdapterSource.Storage(adapterDir))
        check(reloaded.info().method == "lora") { "method ${reloaded.info().method}" }
        val keys = keygen()
        val patch = model.compress(AdapterSource.Storage(adapterDir), CompressOptions(density = "0.3", secretKey = keys.secret))
        check(patch.signed && patch.ratioVsF16 > 10.0) { "patch ${patch.ratioVsF16}" }
        check(verify(patch.bytes, "notes.akp", listOf(keys.public)).trusted) { "not trusted" }
        val before = model.complete(Prompt.Text("Saturday is bread day."), greedy(8)).tokens
        val id = model.attach(model.load(AdapterSource.Patch(patch.bytes, "notes.akp"), listOf(keys.public)))
        val after = model.complete(Prompt.Text("Saturday is bread day."), greedy(8)).tokens
        model.detach(id)
        check(model.complete(Prompt.Text("Saturday is bread day."), greedy(8)).tokens == before) { "detach" }
        check(after.size == 8) { "generation with the patch" }
    }

    test("bad input is a typed exception and the model keeps working") {
        expect<AdaptException.Io>("a missing file") { runBlocking { LanguageModel.open("/nonexistent/model.gguf") } }
        expect<AdaptException.Model>("a corrupt file") { runBlocking { LanguageModel.open(ByteArray(64)) } }
        val junk = PeftFiles("{}".toByteArray(), byteArrayOf(1, 2, 3), null)
        expect<AdaptException.Adapter>("a bad adapter") { runBlocking { model.load(AdapterSource.Peft(junk)) } }
        val keys = keygen()
        val unsigned = model.compress(AdapterSource.Storage(adapterDir), CompressOptions(density = "0.3"))
        val e = expect<AdaptException.Patch>("an unsigned patch where keys are trusted") {
            runBlocking { model.load(AdapterSource.Patch(unsigned.bytes, "unsigned.akp"), listOf(keys.public)) }
        }
        check(e.message!!.contains("unsigned.akp")) { "message ${e.message}" }
        val rank = expect<AdaptException.InvalidArgument>("rank 0") { runBlocking { model.plan(config(1).copy(rank = 0u)) } }
        check(rank.message!!.contains("rank")) { "message ${rank.message}" }
        expect<AdaptException.MemoryBudget>("a budget nothing fits") { runBlocking { model.plan(config(1).copy(memoryBudgetMb = 10.0)) } }
        val cancelled = CancelToken().apply { cancel() }
        expect<AdaptException.Cancelled>("a cancelled call") {
            runBlocking { model.raw.generate(Prompt.Text("Hi"), greedy(8), null, cancelled) }
        }
        val throwing = object : GenerationListener {
            override fun onEvent(event: GenerationEvent) = throw IllegalStateException("the app's listener failed")
        }
        expect<AdaptException.Internal>("a listener that throws") {
            runBlocking { model.raw.generate(Prompt.Text("Hi"), greedy(4), throwing, null) }
        }
        check(model.complete(Prompt.Text("Hi"), greedy(4)).tokens.size == 4) { "the model stopped working" }
    }

    test("a closed model is an exception, not a crash") {
        val other = LanguageModel.open(modelPath, threads = 2, trainable = false)
        other.close()
        expect<AdaptException.Closed>("info after close") { other.info }
        expect<AdaptException.Closed>("generate after close") { runBlocking { other.complete(Prompt.Text("Hi")) } }
    }

    model.close()
    println(if (failures == 0) "jvm: all tests passed" else "jvm: $failures failed")
    exitProcess(if (failures == 0) 0 else 1)
}
