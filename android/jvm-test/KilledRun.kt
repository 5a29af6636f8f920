// The app process the JVM suite kills: it personalizes as the sample app does and prints each
// step's loss and each checkpoint, until the suite kills it (SIGKILL, as Android's low-memory
// killer does). Run by JvmTest.kt: KilledRunKt MODEL.gguf FILES_DIR NOTES.txt
package dev.adaptkit.test

import dev.adaptkit.LanguageModel
import dev.adaptkit.Training
import dev.adaptkit.ffi.TrainEvent
import dev.adaptkit.sample.Personalization
import kotlinx.coroutines.flow.collect
import kotlinx.coroutines.runBlocking
import java.io.File

fun main(args: Array<String>) = runBlocking {
    val (modelPath, filesPath, notesPath) = args
    val model = LanguageModel.open(modelPath, threads = 2)
    Personalization(model, File(filesPath)).start("notes", File(notesPath).readText(), killTestConfig()).collect {
        when (val event = (it as? Training.Progress)?.event) {
            is TrainEvent.Step -> println("step ${event.step} ${event.loss}")
            is TrainEvent.Checkpoint -> println("checkpoint ${event.step}")
            else -> {}
        }
        System.out.flush()
    }
}
