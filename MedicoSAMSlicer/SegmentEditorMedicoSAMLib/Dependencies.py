"""What the effect installs and downloads, each only after the user agrees: PyTorch (through the PyTorch
extension), the Python packages (pip), the model weights; and deleting downloaded weights."""

import contextlib
import logging
import os

import slicer

from SegmentEditorMedicoSAMLib.SlicerHelpers import closeDialog, createProgressDialog


class Dependencies:
    """Installs and downloads for the effect `effect` (its `confirm` asks the user, `showStatus` reports)."""

    def __init__(self, effect):
        self.effect = effect

    def ensure(self, settings):
        """torch via the PyTorch extension, the rest with pip: each only after the user agrees. On a server
        only the client's packages (Slicer bundles them); a model family adds its own (SAM2, LiteMedSAM)."""
        import importlib

        from medicosam.effect.requirements import check_family_supported, get_missing_requirements, is_torch_installed

        remote, family = settings.server.remote, settings.family
        if not remote:
            check_family_supported(family)
        if not remote and not is_torch_installed():
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("MedicoSAM needs the PyTorch extension. Install 'PyTorch' from the "
                                         "Extensions Manager, restart Slicer, then try again.")
                return False
            if not self.effect.confirm("MedicoSAM needs PyTorch, which is not installed yet. Install it now? "
                                       "It downloads up to a few GB (a CUDA build when a GPU is present); "
                                       "Slicer is busy until it finishes."):
                return False
            with self.installing("Installing PyTorch (up to a few GB)...", "PyTorch could not be installed"):
                PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            importlib.invalidate_caches()
            if not is_torch_installed():
                return False
        missing = get_missing_requirements(family, remote)
        if missing:
            if not self.effect.confirm(f"MedicoSAM needs these Python packages: {', '.join(missing)}. "
                                       "Install them now with pip?"):
                return False
            own = not remote and bool(set(missing) & set(family.requirements.values()))
            with self.installing(f"Installing {', '.join(missing)}...", "The Python packages could not be installed"):
                if own:  # the family's way to build its packages (SAM2: an sdist, without its CUDA kernel)
                    os.environ.update(family.build_environment)
                slicer.util.pip_install([*missing, *(family.pip_options if own else ())])
            importlib.invalidate_caches()
        return not get_missing_requirements(family, remote)

    @contextlib.contextmanager
    def installing(self, text, failure):
        """A progress dialog while pip runs (Slicer's pip runs on this thread and repaints at each output line);
        a failure becomes one RunError (`tryWithErrorDisplay` would show a dialog and re-raise)."""
        from medicosam.errors import RunError

        dialog = createProgressDialog(text + " pip's output is in the Python console.", cancellable=False)
        dialog.show()
        slicer.app.processEvents()
        try:
            yield
        except Exception as error:
            logging.exception(failure)
            raise RunError(f"{failure}: {error}. The Python console shows pip's output; install from the "
                           "PyTorch Util module or with pip there, then try again.") from error
        finally:
            closeDialog(dialog)

    def confirmDownload(self, model):
        from medicosam.models.download import get_cache_dir, get_model_path
        from medicosam.models.registry import MODELS

        if model not in MODELS or get_model_path(model).is_file():
            return True
        spec = MODELS[model]
        size = f"{spec.size / 1e6:.0f} MB" if spec.size else "a few hundred MB"
        return self.effect.confirm(f"Download the {model} weights ({size}) from {spec.url.split('/')[2]} into "
                                   f"{get_cache_dir()}? They are checked against the published hash and kept for "
                                   "later sessions ('Delete downloaded models...' removes them).")

    def deleteModels(self):
        """List the downloaded weights with their size and delete them after the user agrees."""
        try:
            from medicosam.models.download import get_cache_dir, list_cached_models, remove_cached_model

            cached, folder = list_cached_models(), get_cache_dir()
        except ImportError:
            slicer.util.infoDisplay("No model was downloaded yet (MedicoSAM's Python packages are not installed).")
            return
        if not cached:
            slicer.util.infoDisplay(f"No downloaded model in {folder}.")
            return
        sizeMb = sum(entry.size for entry in cached) / 1e6
        names = ", ".join(entry.name for entry in cached)
        if not self.effect.confirm(f"Delete {names} ({sizeMb:.0f} MB) from {folder}?\n"
                                   "They will be downloaded again when you choose them."):
            return
        for entry in cached:
            remove_cached_model(entry.name)
        self.effect.refreshModelChoices()
        self.effect.showStatus(f"Deleted {sizeMb:.0f} MB of downloaded models.")
