// dev.adaptkit for Android: the uniffi-generated Kotlin (package dev.adaptkit.ffi), the
// idiomatic layer (src/main/kotlin/dev/adaptkit), and libadaptkit_ffi.so for arm64-v8a,
// armeabi-v7a and x86_64, built by android/build-rust.sh (cargo-ndk) before each build.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.adaptkit"
    compileSdk = 35
    defaultConfig {
        minSdk = 26
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].kotlin.srcDir(layout.buildDirectory.dir("generated/uniffi"))
    sourceSets["main"].jniLibs.srcDir(layout.buildDirectory.dir("generated/jniLibs"))
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    // JNA as an AAR carries its own libjnidispatch.so for every ABI.
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
}

val buildRust by tasks.registering(Exec::class) {
    description = "Builds libadaptkit_ffi.so for each ABI and generates the Kotlin bindings."
    workingDir = rootProject.projectDir
    commandLine("./build-rust.sh", layout.buildDirectory.get().asFile.absolutePath)
}
tasks.named("preBuild") { dependsOn(buildRust) }
