// The sample app's screens: Chat, Personalize (paste notes, a progress bar, cancel) and Adapters
// (use one, compress it to a patch, delete it). All state is in SampleViewModel.
package dev.adaptkit.sample

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.AlertDialog
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.RadioButton
import androidx.compose.material3.Scaffold
import androidx.compose.material3.Tab
import androidx.compose.material3.TabRow
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.compose.collectAsStateWithLifecycle

class MainActivity : ComponentActivity() {
    private val model: SampleViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { SampleScreen(model) } }
    }
}

@Composable
fun SampleScreen(model: SampleViewModel) {
    val state by model.state.collectAsStateWithLifecycle()
    var tab by rememberSaveable { mutableIntStateOf(0) }
    Scaffold(topBar = {
        TabRow(selectedTabIndex = tab) {
            listOf("Chat", "Personalize", "Adapters").forEachIndexed { i, title ->
                Tab(selected = tab == i, onClick = { tab = i }, text = { Text(title) })
            }
        }
    }) { padding ->
        Column(Modifier.padding(padding).padding(12.dp).fillMaxSize(), verticalArrangement = Arrangement.spacedBy(8.dp)) {
            Text(state.status + (state.active?.let { " · adapter $it" } ?: ""), style = MaterialTheme.typography.labelMedium)
            state.training?.let { TrainingProgress(it, model::cancel) }
            when (tab) {
                0 -> Chat(state, model::send)
                1 -> Personalize(state, model::personalize)
                else -> Adapters(state, model::use, model::patch, model::delete)
            }
        }
        state.message?.let {
            AlertDialog(
                onDismissRequest = model::dismissMessage,
                confirmButton = { TextButton(onClick = model::dismissMessage) { Text("OK") } },
                text = { Text(it) },
            )
        }
    }
}

@Composable
fun TrainingProgress(progress: RunProgress, cancel: () -> Unit) {
    Row(verticalAlignment = Alignment.CenterVertically, horizontalArrangement = Arrangement.spacedBy(8.dp)) {
        Column(Modifier.weight(1f)) {
            val label = if (progress.steps == 0) "Preparing ${progress.name}…"
            else "${progress.name}: step ${progress.step}/${progress.steps}" + (progress.loss?.let { ", loss %.2f".format(it) } ?: "")
            Text(label)
            if (progress.steps == 0) LinearProgressIndicator(Modifier.fillMaxWidth())
            else LinearProgressIndicator(progress = { progress.step / progress.steps.toFloat() }, modifier = Modifier.fillMaxWidth())
        }
        TextButton(onClick = cancel) { Text("Cancel") }
    }
}

@Composable
fun Chat(state: UiState, send: (String) -> Unit) {
    var draft by rememberSaveable { mutableStateOf("") }
    Column(Modifier.fillMaxSize(), verticalArrangement = Arrangement.spacedBy(8.dp)) {
        LazyColumn(Modifier.weight(1f)) {
            items(state.turns) { turn -> Text("${if (turn.role == "user") "You" else "Model"}: ${turn.text}", Modifier.padding(vertical = 4.dp)) }
        }
        Row(verticalAlignment = Alignment.CenterVertically) {
            OutlinedTextField(draft, { draft = it }, Modifier.weight(1f), placeholder = { Text("Message") })
            Button(onClick = { send(draft); draft = "" }, enabled = state.ready && !state.replying) { Text("Send") }
        }
    }
}

@Composable
fun Personalize(state: UiState, personalize: (String, String) -> Unit) {
    var name by rememberSaveable { mutableStateOf("my-notes") }
    var notes by rememberSaveable { mutableStateOf("") }
    Column(Modifier.fillMaxSize(), verticalArrangement = Arrangement.spacedBy(8.dp)) {
        Text("Paste your notes: the model learns their facts and style on this phone; nothing leaves it.")
        OutlinedTextField(name, { name = it }, Modifier.fillMaxWidth(), label = { Text("Adapter name") }, singleLine = true)
        OutlinedTextField(notes, { notes = it }, Modifier.fillMaxWidth().weight(1f), label = { Text("Notes") })
        Button(
            onClick = { personalize(name, notes) },
            enabled = state.ready && state.training == null && notes.isNotBlank(),
        ) { Text("Personalize") }
    }
}

@Composable
fun Adapters(state: UiState, use: (String?) -> Unit, patch: (String) -> Unit, delete: (String) -> Unit) {
    LazyColumn {
        item {
            Row(verticalAlignment = Alignment.CenterVertically) {
                RadioButton(selected = state.active == null, onClick = { use(null) })
                Text("Base model")
            }
        }
        items(state.adapters) { name ->
            Row(verticalAlignment = Alignment.CenterVertically) {
                RadioButton(selected = state.active == name, onClick = { use(name) })
                Text(name, Modifier.weight(1f))
                TextButton(onClick = { patch(name) }) { Text("Patch") }
                TextButton(onClick = { delete(name) }) { Text("Delete") }
            }
        }
    }
}
