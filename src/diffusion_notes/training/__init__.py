"""The training command: recipes, the loop, the frozen parts bound from the shelf, and shipping.

    recipes/      one recipe per model, grouped by the book's parts
    loop          train(): lr, batch, forward, backward, clip, step, EMA, log, checkpoint
    run_state     TrainArgs, the run's settings, exact resume, the checkpoint and the final weights
    distributed   World: data-parallel runs under torchrun or accelerate launch
    logs          losses.csv and loss.png
    frozen        the frozen parts a recipe trains against, loaded from the shelf
    overrides     --set key=value on a config
    ship          a finished run into the weights directory and its manifest

The only code (with `pretrained.py`) that knows the shipped weights.
"""
