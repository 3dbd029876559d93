import enum


class RESULTS(enum.Enum):
    """How a solve or descent ended. `Trajectory.result` is one of these; failure is
    data, not an exception, and the trajectory up to that point is kept."""

    successful = ""
    max_steps_reached = (
        "The maximum number of solver steps was reached before the horizon. Raise "
        "`max_steps`, loosen `rtol`/`atol`, try `solver='auto'` (it switches to an "
        "implicit method where the flow turns stiff), or, on the linear clock, use "
        "`clock='log'` for long horizons."
    )
    step_size_too_small = (
        "The step size collapsed to the floating-point resolution of the clock. The "
        "vector field is probably non-smooth or blowing up here; try a lower-order "
        "or implicit solver, or looser tolerances."
    )
    nonfinite = (
        "The state or the vector field became non-finite (NaN or inf). Check the "
        "data and the model, and use float64 (`jax.config.update('jax_enable_x64', "
        "True)`)."
    )
    invalid_step_size = (
        "A step size was not positive (the learning-rate schedule returned η < 0 or "
        "NaN at the step where the run stopped); the run keeps the points before it."
    )
    solver_failed = (
        "The integrator failed (e.g. the implicit solver's root finder did not "
        "converge). Try tighter root-finder tolerances or another solver."
    )
    event_occurred = "A stopping rule ended the solve before the horizon."
    interrupted = (
        "The run was interrupted (KeyboardInterrupt); the trajectory up to the last "
        "completed chunk is kept."
    )

    @property
    def message(self) -> str:
        return self.value or "The solve reached its horizon."

    @property
    def success(self) -> bool:
        return self in (RESULTS.successful, RESULTS.event_occurred)
