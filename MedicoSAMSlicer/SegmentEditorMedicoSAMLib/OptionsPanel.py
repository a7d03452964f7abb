"""The effect's options panel: a widget per row of `medicosam.effect.panel.ROWS` (each bound to one settings
field), the prompt tools, the segment's prompt nodes and the action buttons. Every change goes to the effect."""

import ctk
import qt

from SegmentEditorMedicoSAMLib.SlicerHelpers import getShortcutKeys

#: Tool -> (button text, tooltip), in button order (`medicosam.effect.interaction.TOOL_PROMPTS`).
TOOL_BUTTONS = {
    "positive": ("+ Point", "Left-click adds a point inside the object to the + point list."),
    "negative": ("- Point", "Left-click adds a point outside the object to the - point list."),
    "box": ("Box", "Left-drag draws a box around the object: it sets the ROI."),
    "lasso": ("Lasso", "Left-drag draws a closed contour around the object: a box and a mask prompt."),
    "scribble": ("+ Scribble", "Left-drag draws a stroke inside the object: points along it."),
    "negative_scribble": ("- Scribble", "Left-drag draws a stroke over the background: negative points along it."),
}
#: Action (`SegmentEditorEffect.onAction`) -> (button text, tooltip): the Model section's buttons, then the
#: buttons below the prompts.
MODEL_BUTTONS = {
    "test_connection": ("Test connection", "Ask the server which model it runs (name, architecture, hash)."),
    "load_model": ("Load model", "Install what is missing, download and load the model now (otherwise the first "
                                 "prompt does it)."),
    "delete_models": ("Delete downloaded models...", "List the downloaded weights and delete them."),
}
ACTION_BUTTONS = {
    "apply": ("Apply slice", "Write the previewed slice into the segment (one Undo step)."),
    "clear": ("Clear prompts", "Delete the current slice's prompts from the segment's markups."),
    "undo_prompt": ("Undo prompt", "Take back the newest prompt of the segment (a point, a box drag, a stroke); "
                                   "Undo (Ctrl+Z) takes back writes."),
    "reset": ("Reset prompts", "Delete every prompt of the segment on every slice and start it over; its voxels "
                               "stay (Undo or Erase remove them)."),
    "segment_in_roi": ("Segment in ROI", "Segment every slice the ROI covers (its box on each slice, plus the "
                                         "prompts placed there), in one Undo step."),
    "new_segment": ("New segment", "Add an empty segment after this one and select it; the tool stays."),
}
#: Direction -> (button text, tooltip) of the one-click propagation buttons.
PROPAGATE_BUTTONS = {
    "down": ("Propagate down", "Segment the slices below the applied ones (decreasing slice index)."),
    "both": ("Propagate both", "Segment the slices on both sides of the applied ones."),
    "up": ("Propagate up", "Segment the slices above the applied ones (increasing slice index)."),
}


class OptionsPanel:
    """The widgets of the effect `effect`, made in `scriptedEffect`'s options frame."""

    def __init__(self, effect):
        self.effect = effect
        self.rows = {}  # settings field -> (OptionRow, widget, label or None)
        self.buttons = {}  # action -> button
        self.toolButtons = {}
        self.toolGroup = qt.QButtonGroup()
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True

    def build(self):
        """The panel, top to bottom: Model, the tools, the segment's prompt nodes, the prompt options, the
        actions, Propagation, the status line."""
        from medicosam.effect.interaction import FLIPPED_TOOLS
        from medicosam.effect.panel import ROWS, SECTIONS

        scriptedEffect = self.effect.scriptedEffect
        key = getShortcutKeys()
        forms = {}
        sections = {}
        for section, title in SECTIONS.items():
            if title:
                sections[section] = ctk.ctkCollapsibleButton()
                sections[section].text = title
            else:
                sections[section] = qt.QWidget()
            forms[section] = qt.QFormLayout(sections[section])
        for row in ROWS:
            self.addRow(row, forms[row.section], key)
        for action, (text, tip) in MODEL_BUTTONS.items():
            forms["model"].addRow(self.createButton(action, text, tip))
        scriptedEffect.addOptionsWidget(sections["model"])

        toolLayout = qt.QGridLayout()
        for number, (tool, (text, tip)) in enumerate(TOOL_BUTTONS.items()):
            button = qt.QPushButton(f"{text} ({key[tool]})" if tool in key else text)
            button.checkable = True
            button.setToolTip(tip + (f" {key['flip']} flips + and -." if tool in FLIPPED_TOOLS else ""))
            button.objectName = "MedicoSAMTool" + tool.title().replace("_", "")
            self.toolGroup.addButton(button)
            toolLayout.addWidget(button, number // 3, number % 3)
            self.toolButtons[tool] = button
            self.effect.connectSignal(button, "clicked()", lambda tool=tool: self.effect.setTool(tool))
        scriptedEffect.addLabeledOptionsWidget("Prompt:", toolLayout)
        for label, layout in self.effect.markups.createWidgets():
            scriptedEffect.addLabeledOptionsWidget(label, layout)
        scriptedEffect.addOptionsWidget(sections["prompt"])

        sliceButtons = qt.QGridLayout()
        for number, (action, (text, tip)) in enumerate(ACTION_BUTTONS.items()):
            sliceButtons.addWidget(self.createButton(action, f"{text} ({key[action]})" if action in key else text, tip),
                                   number // 2, number % 2)
        scriptedEffect.addOptionsWidget(sliceButtons)

        forms["propagation"].addRow(self.createButton(
            "propagate", f"Propagate ({key['propagate']})", "Segment the neighbouring slices from every applied "
            "slice, in the Direction above."))
        propagateButtons = qt.QHBoxLayout()
        for direction, (text, tip) in PROPAGATE_BUTTONS.items():
            propagateButtons.addWidget(self.createButton("propagate_" + direction, text, tip))
        forms["propagation"].addRow(propagateButtons)
        scriptedEffect.addOptionsWidget(sections["propagation"])
        scriptedEffect.addOptionsWidget(self.statusLabel)

    def addRow(self, row, form, key):
        """The widget of one `OptionRow`, in its section's form."""
        if row.kind == "choice":
            widget = qt.QComboBox()
            for value, text in (row.choices or {}).items():
                widget.addItem(text, value)
            signal = "currentIndexChanged(int)"
        elif row.kind in ("integer", "number"):
            widget = qt.QSpinBox() if row.kind == "integer" else qt.QDoubleSpinBox()
            widget.setRange(row.minimum, row.maximum)
            widget.setSingleStep(row.step)
            widget.suffix = row.suffix
            widget.specialValueText = row.none_text
            signal = "valueChanged(int)" if row.kind == "integer" else "valueChanged(double)"
        elif row.kind == "flag":
            widget = qt.QCheckBox(f"{row.label} ({key[row.shortcut]})" if row.shortcut else row.label)
            signal = "toggled(bool)"
        elif row.kind == "file":
            widget = ctk.ctkPathLineEdit()
            widget.filters = ctk.ctkPathLineEdit.Files
            widget.nameFilters = ["SAM checkpoints (*.pth *.pt)"]
            signal = "currentPathChanged(QString)"
        else:
            widget = qt.QLineEdit()
            widget.placeholderText = row.placeholder
            if row.kind == "password":
                widget.echoMode = qt.QLineEdit.Password
            signal = "editingFinished()"
        widget.setToolTip(row.tip)
        widget.objectName = "MedicoSAM" + row.field.title().replace(".", "").replace("_", "")
        label = None if row.kind == "flag" else qt.QLabel(row.label)
        if label is None:
            form.addRow(widget)
        else:
            form.addRow(label, widget)
        self.rows[row.field] = (row, widget, label)
        self.effect.connectSignal(widget, signal, lambda *args, field=row.field: self.effect.onOptionChanged(field))

    def createButton(self, action, text, tip):
        button = qt.QPushButton(text)
        button.setToolTip(tip)
        button.objectName = "MedicoSAM" + action.title().replace("_", "")
        self.buttons[action] = button
        self.effect.connectSignal(button, "clicked()", lambda action=action: self.effect.onAction(action))
        return button

    def read(self, field):
        """The value the widget of `field` shows, as the settings hold it."""
        row, widget, _ = self.rows[field]
        if row.kind == "choice":
            return widget.itemData(widget.currentIndex)
        if row.kind in ("integer", "number"):
            return None if row.none_text and widget.value == row.minimum else widget.value
        if row.kind == "flag":
            return widget.checked
        if row.kind == "file":
            return widget.currentPath
        return widget.text.strip()

    def show(self, field, value):
        row, widget, _ = self.rows[field]
        if row.kind == "choice":
            widget.setCurrentIndex(widget.findData(value))
        elif row.kind in ("integer", "number"):
            widget.value = row.minimum if value is None else value
        elif row.kind == "flag":
            widget.checked = value
        elif row.kind == "file":
            widget.currentPath = value
        elif widget.text != value:  # a line being edited keeps its cursor
            widget.text = value

    def update(self, settings):
        """Every widget shows `settings`; rows are shown as `panel.is_row_shown` says."""
        from medicosam.effect.panel import get_value, is_row_shown

        for field, (row, widget, label) in self.rows.items():
            wasBlocked = widget.blockSignals(True)
            self.show(field, get_value(settings, field))
            widget.blockSignals(wasBlocked)
            widget.visible = is_row_shown(row, settings)
            if label is not None:
                label.visible = widget.visible
        for tool, button in self.toolButtons.items():
            button.checked = tool == settings.tool
        remote = settings.server.remote
        self.buttons["test_connection"].visible = remote
        self.buttons["delete_models"].visible = not remote  # the server keeps its own models
        self.buttons["load_model"].text = "Connect" if remote else "Load model"

    def setModelChoices(self, choices):
        """The model menu: `settings.ModelChoice` entries."""
        _, widget, _ = self.rows["model"]
        wasBlocked = widget.blockSignals(True)
        widget.clear()
        for choice in choices:
            widget.addItem(choice.label, choice.name)
        widget.blockSignals(wasBlocked)

    def showStatus(self, text):
        self.statusLabel.text = text
