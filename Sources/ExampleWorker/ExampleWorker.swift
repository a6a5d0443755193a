import GantryCore
import GantryWorkerApp

/// `gantry-example-worker`: the standard worker plus a task of its own, `shout`.
///
/// Run it instead of `gantry-worker` (same flags and settings) and use `task: shout` in a pipeline.
@main
enum ExampleWorker {
    static func main() async {
        var tasks = TaskRegistry()
        tasks.register("shout", kind: .io, summary: "upper-cases its input text and appends args.suffix (default \"!\")") { input, context in
            guard let text = String(validating: input, as: UTF8.self) else {
                throw GantryError(.invalidArgument, "shout: the input is not UTF-8 text")
            }
            let suffix = context.args["suffix"]?.stringValue ?? "!"
            return Array((text.uppercased() + suffix).utf8)
        }
        // First thing in main: pool children are this executable too.
        await WorkerApp.main(tasks: tasks)
    }
}
