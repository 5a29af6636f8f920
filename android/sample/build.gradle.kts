// The sample app: chat with SmolLM2, personalize it on your notes (a progress bar, paused in the
// background, resumed after the app is killed), keep one adapter per name. The model is bundled
// as an uncompressed asset (scripts/fetch-model.sh fetches and verifies it) and copied once into
// the app's files directory, where it is memory-mapped.
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.compose")
}

android {
    namespace = "dev.adaptkit.sample"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.adaptkit.sample"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }
    buildFeatures { compose = true }
    // An uncompressed asset streams out at full speed on first launch.
    androidResources { noCompress += "gguf" }
    sourceSets["main"].assets.srcDir(layout.buildDirectory.dir("generated/model"))
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation(project(":adaptkit"))
    implementation(platform("androidx.compose:compose-bom:2024.12.01"))
    implementation("androidx.compose.material3:material3")
    implementation("androidx.activity:activity-compose:1.9.3")
    implementation("androidx.lifecycle:lifecycle-viewmodel-compose:2.8.7")
    implementation("androidx.lifecycle:lifecycle-runtime-compose:2.8.7")
    implementation("androidx.lifecycle:lifecycle-process:2.8.7")
}

val bundleModel by tasks.registering(Exec::class) {
    description = "Fetches SmolLM2-135M-Instruct (Q4_1, sha256-checked) into the app's assets."
    val assets = layout.buildDirectory.dir("generated/model").get().asFile
    workingDir = rootProject.projectDir.parentFile
    commandLine("sh", "-c", "mkdir -p '$assets' && cp \"$(scripts/fetch-model.sh)\" '$assets/model.gguf'")
    outputs.file(File(assets, "model.gguf"))
}
tasks.named("preBuild") { dependsOn(bundleModel) }
