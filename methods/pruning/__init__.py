"""The pruning kit shared by ``layer-prune`` and ``filter-prune`` (and open to any pruning method):

- ``criteria``: the filter criteria of LayerPrune collected in one shot, the imprint criterion,
  unit importance and the ensemble;
- ``scores``: collecting them for a method context (cached in the sweep's workdir) and the
  criterion knobs;
- ``units``: removing whole units (replaced by identity) and their cost signatures;
- ``channels``: physical channel removal with Torch-Pruning from precomputed scores, by ratio or
  to a MACs target;
- ``graph``: graph-survival checks on the exported ONNX file;
- ``recipe``: the fine-tune both methods use (LayerPrune's shape, sized per preset).

Which units are removable and which layers keep their channels is declared per model family in
``harness.models`` (``removable_units``, ``pruning_ignored_layers``). Nothing here imports a
method package, so neither method imports the other.
"""
