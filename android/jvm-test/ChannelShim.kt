// Test harness only (see CoroutinesShim.kt): `trySend` is a member of SendChannel from
// coroutines 1.5 on (members win over this extension there), and like it this never throws: a
// closed channel (the collector went away) refuses the element. 1.0.1 has `offer`, which throws.
package dev.adaptkit

import kotlinx.coroutines.channels.SendChannel

fun <E> SendChannel<E>.trySend(element: E): Boolean =
    try {
        offer(element)
    } catch (closed: Exception) {
        false
    }
