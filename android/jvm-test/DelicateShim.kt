// Test harness only (see CoroutinesShim.kt): the opt-in marker the generated bindings name,
// added in coroutines 1.5.
package kotlinx.coroutines

@RequiresOptIn
@Retention(AnnotationRetention.BINARY)
annotation class DelicateCoroutinesApi
