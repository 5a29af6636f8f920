// The Kotlin face on the JVM, against the real model: streaming, training with progress, a
// cancel through coroutine cancellation, resume, adapters saved and reloaded, a signed patch, and
// the error paths. Run by scripts/jvm-test.sh: JvmTestKt MODEL.gguf WORKDIR NOTES.txt
package dev.adaptkit.test

import dev.adaptkit.LanguageModel
import dev.adaptkit.Training
import dev.adaptkit.greedy
import dev.adaptkit.user
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

private fun config(steps: Int, resume: Boolean = false) = TrainConfig(
    rank = 4u, steps = steps.toUInt(), batch = 1u, seq = 32u, lr = 2e-4f, evalEvery = 0u,
    checkpointEvery = 0u, heldOutFraction = 0f, resume = resume,
)

private suspend fun finish(model: LanguageModel, data: TrainingData, config: TrainConfig, storage: Storage): Pair<List<UInt>, TrainResult> {
    val steps = mutableListOf<UInt>()
    var result: TrainResult? = null
    model.train(data, config, storage).collect {
        when (it) {
            is Training.Progress -> (it.event as? TrainEvent.Step)?.let { s -> steps.add(s.step) }
            is Training.Finished -> result = it.result
        }
    }
    return steps to result!!
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

    val run = Storage.directory(File(work, "run").path)
    test("cancelling the collecting coroutine stops training and saves a checkpoint; resume finishes it") {
        val seen = mutableListOf<UInt>()
        val second = CompletableDeferred<Unit>()
        val job = launch(Dispatchers.Default) {
            model.train(data, config(6), run).collect {
                val event = (it as? Training.Progress)?.event
                if (event is TrainEvent.Step) {
                    seen.add(event.step)
                    if (event.step == 2u) second.complete(Unit)
                }
            }
        }
        second.await()
        job.cancelAndJoin()
        val checkpoint = File(work, "run/checkpoint.safetensors")
        var waited = 0
        while (!checkpoint.exists()) {
            check(waited < 600) { "no checkpoint 60 s after the cancel" }
            delay(100); waited++
        }
        val (steps, result) = finish(model, data, config(6, resume = true), run)
        check(steps.first() > 2u && steps.last() == 6u) { "resumed steps $steps after $seen" }
        check(result.report.steps == 6u) { "report ${result.report.steps}" }
    }

    val adapterDir = Storage.directory(File(work, "adapter").path)
    test("an adapter is saved, reloaded, compressed to a signed patch, and attached") {
        val (_, trained) = finish(model, data, config(3), Storage.memory())
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
