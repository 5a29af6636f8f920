// adaptkit for Kotlin: idiomatic wrappers over the generated bindings (package dev.adaptkit.ffi,
// made by uniffi from bindings/ffi). No logic of its own: suspend functions for long calls, Flow
// for streamed tokens and training progress, coroutine cancellation as the runtime's cancel, and
// Closeable handles. Every error is a dev.adaptkit.ffi.AdaptException with the core's message.
package dev.adaptkit

import dev.adaptkit.ffi.AdaptException
import dev.adaptkit.ffi.Adapter
import dev.adaptkit.ffi.AdapterSource
import dev.adaptkit.ffi.ChatMessage
import dev.adaptkit.ffi.CompressOptions
import dev.adaptkit.ffi.CompressedPatch
import dev.adaptkit.ffi.Device
import dev.adaptkit.ffi.FlowerEvent
import dev.adaptkit.ffi.FlowerListener
import dev.adaptkit.ffi.FlowerOptions
import dev.adaptkit.ffi.FlowerReply
import dev.adaptkit.ffi.GenerateOptions
import dev.adaptkit.ffi.GenerationEvent
import dev.adaptkit.ffi.GenerationListener
import dev.adaptkit.ffi.GenerationReport
import dev.adaptkit.ffi.LoadOptions
import dev.adaptkit.ffi.MemoryPlan
import dev.adaptkit.ffi.Model
import dev.adaptkit.ffi.ModelInfo
import dev.adaptkit.ffi.OpenOptions
import dev.adaptkit.ffi.PerplexityReport
import dev.adaptkit.ffi.Prompt
import dev.adaptkit.ffi.Storage
import dev.adaptkit.ffi.TrainConfig
import dev.adaptkit.ffi.TrainEvent
import dev.adaptkit.ffi.TrainListener
import dev.adaptkit.ffi.TrainResult
import dev.adaptkit.ffi.TrainingData
import dev.adaptkit.ffi.compress
import kotlinx.coroutines.async
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow
import java.io.Closeable

/** What a training flow emits: the run's events, then its result. */
sealed class Training {
    data class Progress(val event: TrainEvent) : Training()
    data class Finished(val result: TrainResult) : Training()
}

/** What [Model.joinFlower] emits: each event of the node, then the replies it sent. */
sealed class FlowerNode {
    data class Event(val event: FlowerEvent) : FlowerNode()
    data class Finished(val replies: List<FlowerReply>) : FlowerNode()
}

/** Runs [call] with a listener that feeds a channel, emitting what it receives, then [finish]. */
private fun <E, R, T> streamed(
    call: suspend ((E) -> Unit) -> R,
    event: (E) -> T?,
    finish: (R) -> T?,
): Flow<T> = flow {
    coroutineScope {
        val channel = Channel<T>(Channel.UNLIMITED)
        val result = async {
            try {
                call { e -> event(e)?.let { channel.trySend(it) } }
            } finally {
                channel.close()
            }
        }
        for (item in channel) emit(item)
        finish(result.await())?.let { emit(it) }
    }
}

/**
 * A language model on this device. Close it to free its memory at once; calls after that throw
 * [AdaptException.Closed]. Thread-safe.
 */
class LanguageModel private constructor(val raw: Model) : Closeable {
    companion object {
        /** Opens a GGUF file (memory-mapped: the OS pages the frozen weights as memory allows). */
        suspend fun open(
            path: String,
            threads: Int = 0,
            device: Device = Device.CPU,
            trainable: Boolean = true,
            cache: Storage? = null,
        ): LanguageModel = LanguageModel(Model.open(path, OpenOptions(threads.toUInt(), device, trainable, cache)))

        /** Opens a GGUF file's bytes. */
        suspend fun open(
            gguf: ByteArray,
            threads: Int = 0,
            device: Device = Device.CPU,
            trainable: Boolean = true,
        ): LanguageModel = LanguageModel(Model.openBytes(gguf, OpenOptions(threads.toUInt(), device, trainable, null)))
    }

    val info: ModelInfo get() = raw.info()

    /** The text generated from [prompt], token by token; cancelling the collector stops it. */
    fun generate(prompt: String, options: GenerateOptions = GenerateOptions()): Flow<String> =
        stream(Prompt.Text(prompt), options)

    /** The assistant's reply to [messages], token by token. */
    fun chat(messages: List<ChatMessage>, options: GenerateOptions = GenerateOptions()): Flow<String> =
        stream(Prompt.Chat(messages), options)

    /** One user message in, the reply's text out. */
    suspend fun reply(message: String, options: GenerateOptions = GenerateOptions()): String =
        complete(Prompt.Chat(listOf(ChatMessage("user", message))), options).text

    /** Generation with its report (the text, the tokens, timings, why it stopped). */
    suspend fun complete(prompt: Prompt, options: GenerateOptions = GenerateOptions()): GenerationReport =
        raw.generate(prompt, options, null, null)

    private fun stream(prompt: Prompt, options: GenerateOptions): Flow<String> = streamed(
        call = { send: (GenerationEvent) -> Unit ->
            raw.generate(prompt, options, object : GenerationListener {
                override fun onEvent(event: GenerationEvent) = send(event)
            }, null)
        },
        event = { e ->
            when (e) {
                is GenerationEvent.Token -> e.text.ifEmpty { null }
                is GenerationEvent.Tail -> e.text.ifEmpty { null }
                else -> null
            }
        },
        finish = { null },
    )

    suspend fun perplexity(text: String, seq: Int = 128): PerplexityReport = raw.perplexity(text, seq.toUInt(), null)

    /** The memory plan [config] would train with; throws [AdaptException.MemoryBudget] when none fits. */
    suspend fun plan(config: TrainConfig): MemoryPlan = raw.plan(config)

    /**
     * Trains an adapter: [Training.Progress] for each event, then [Training.Finished]. Checkpoints
     * go to [storage]; cancelling the collector stops the run at its next step and saves one, and
     * the same call with `config.resume = true` continues it.
     */
    fun train(data: TrainingData, config: TrainConfig, storage: Storage): Flow<Training> = streamed(
        call = { send: (TrainEvent) -> Unit ->
            raw.train(data, config, storage, object : TrainListener {
                override fun onEvent(event: TrainEvent) = send(event)
            }, null)
        },
        event = { e -> Training.Progress(e) },
        finish = { r -> Training.Finished(r) },
    )

    /**
     * Joins a Flower federation as a node ([options]: the SuperLink, a directory for the node's
     * key and checkpoints): trains the adapters it is sent on [data] and returns the updates, until
     * the collector is cancelled or `options.maxMessages` are answered.
     */
    fun joinFlower(options: FlowerOptions, data: TrainingData): Flow<FlowerNode> = streamed(
        call = { send: (FlowerEvent) -> Unit ->
            raw.joinFlower(options, data, object : FlowerListener {
                override fun onEvent(event: FlowerEvent) = send(event)
            }, null)
        },
        event = { e -> FlowerNode.Event(e) },
        finish = { r -> FlowerNode.Finished(r) },
    )

    /** Loads an adapter (a directory, a storage, PEFT bytes, a patch) made for this model. */
    suspend fun load(source: AdapterSource, trustedKeys: List<String> = emptyList()): Adapter =
        raw.loadAdapter(source, LoadOptions(trustedKeys, false))

    /** Attaches [adapter] at [scale]; returns the id [detach] takes. */
    fun attach(adapter: Adapter, scale: Float = 1f): ULong = raw.attach(adapter, scale)

    fun detach(id: ULong) = raw.detach(id)

    fun detachAll() = raw.detachAll()

    /** Compresses an adapter into a ComPEFT patch (`.akp` bytes), signed when a key is given. */
    suspend fun compress(source: AdapterSource, options: CompressOptions = CompressOptions()): CompressedPatch =
        dev.adaptkit.ffi.compress(raw, source, options)

    /** Frees the model's memory now. */
    override fun close() = raw.release()
}

/** One user message, for [LanguageModel.chat]. */
fun user(text: String) = ChatMessage("user", text)

/** Greedy decoding (the most likely token each step), at most [maxTokens] tokens. */
fun greedy(maxTokens: Int = 256) = GenerateOptions(maxTokens = maxTokens.toUInt(), temperature = 0f)
