// The Android build: the `adaptkit` library module (generated bindings + dev.adaptkit + the
// native libraries) and the `sample` app. Needs the Android SDK, the NDK and cargo-ndk (see README, "Android").
pluginManagement {
    repositories { google(); mavenCentral(); gradlePluginPortal() }
}
dependencyResolutionManagement {
    repositories { google(); mavenCentral() }
}
rootProject.name = "adaptkit-android"
include(":adaptkit", ":sample")
