// Test harness only: the few kotlinx-coroutines APIs newer than Debian's 1.0.1 that dev.adaptkit
// uses (Flow arrived in 1.2; the generated bindings' DelicateCoroutinesApi is in DelicateShim.kt). Maven Central is not
// reachable where the JVM suite runs; apps get the real library (coroutines >= 1.6, declared in
// android/adaptkit/build.gradle.kts), where these names are the library's own.
@file:Suppress("unused")

package kotlinx.coroutines.flow

interface FlowCollector<in T> {
    suspend fun emit(value: T)
}

interface Flow<out T> {
    suspend fun collect(collector: FlowCollector<T>)
}

fun <T> flow(block: suspend FlowCollector<T>.() -> Unit): Flow<T> = object : Flow<T> {
    override suspend fun collect(collector: FlowCollector<T>) = collector.block()
}

suspend inline fun <T> Flow<T>.collect(crossinline action: suspend (T) -> Unit) =
    collect(object : FlowCollector<T> {
        override suspend fun emit(value: T) = action(value)
    })

suspend fun <T> Flow<T>.toList(): List<T> {
    val out = mutableListOf<T>()
    collect { out.add(it) }
    return out
}
